"""The investigation query API: get, list, report, bundle, watch and cancel, authenticated and
rate-limited like intake.

Errors are the predecessor's: 401 without valid credentials, 429 over the query limit, 404
{"error": "Investigation not found"} and, while running, 404 {"error": "Report not yet
available", "investigation_status": ...}.
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
import zipfile
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import asyncpg
from google.api import httpbody_pb2

from pm.common.v1 import types_pb2
from pm.investigation.v1 import investigation_pb2, investigation_pb2_grpc
from pm_auth import CATEGORY_INVESTIGATION, AuthProvider, RateLimiter
from pm_errors import InvalidArgument, NotFound
from pm_grpc.http import Context
from pm_orchestrator.api import fetch_page, paging
from pm_orchestrator.engine import Engine
from pm_orchestrator.feedback import FeedbackRpcs
from pm_orchestrator.similar import SimilarRpcs

# How often a watcher looks for new events while nothing happens.
WATCH_POLL_SECONDS = 0.25

_COLUMNS = """id, ticket_id, domain, mode, status, phase, requested_by, trigger_source, created_at, updated_at,
started_at, completed_at, verdict, confidence, summary, error, report_url, batch_id, hypothesis_iteration,
max_iterations, input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, cost_usd, tool_calls,
(SELECT coalesce(array_agg(DISTINCT e.phase), '{}') FROM investigation_events e
  WHERE e.investigation_id = investigations.id AND e.kind = 'phase') AS phases_entered,
(SELECT count(*) FROM investigation_steps s
  WHERE s.investigation_id = investigations.id AND s.status IN ('dispatched', 'running')) AS steps_running,
extract(epoch FROM coalesce(completed_at, now()) - coalesce(started_at, created_at)) AS elapsed_seconds"""
# Phases in the order they run, for phases_done.
PHASE_ORDER = ("intake", "triage", "gather", "hypothesize", "verify", "recommend", "report", "deliver")


def phases_done(entered: Sequence[str], current: str, status: str) -> list[str]:
    """The phases an investigation has finished: INTAKE once it started, and every phase it
    entered but the current one (unless it completed)."""
    done = {p for p in entered if p != current or status == "completed"}
    if status != "queued":
        done.add("intake")
    return [p for p in PHASE_ORDER if p in done]


def _id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument("Invalid investigation id", details={"id": value[:100]}) from None


def to_proto(row: Mapping[str, Any]) -> investigation_pb2.Investigation:
    message = investigation_pb2.Investigation(
        id=str(row["id"]),
        ticket_id=row["ticket_id"],
        domain=row["domain"] or "",
        mode=row["mode"],
        status=row["status"],
        phase=row["phase"],
        requested_by=row["requested_by"],
        trigger_source=row["trigger_source"],
        hypothesis_iteration=row["hypothesis_iteration"],
        max_iterations=row["max_iterations"],
        phases_done=phases_done(row["phases_entered"], row["phase"], row["status"]),
        steps_running=row["steps_running"],
        elapsed_seconds=round(max(float(row["elapsed_seconds"]), 0.0), 3),
        usage=types_pb2.Usage(
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            cache_creation_input_tokens=row["cache_creation_tokens"],
            cache_read_input_tokens=row["cache_read_tokens"],
            cost_usd=float(row["cost_usd"]),
            tool_calls=row["tool_calls"],
        ),
    )
    message.created_at.FromDatetime(row["created_at"])
    message.updated_at.FromDatetime(row["updated_at"])
    if row["completed_at"] is not None:
        message.completed_at.FromDatetime(row["completed_at"])
    if row["started_at"] is not None:
        message.started_at.FromDatetime(row["started_at"])
    for name in ("verdict", "summary", "error", "report_url"):
        if row[name] is not None:
            setattr(message, name, row[name])
    if row["confidence"] is not None:
        message.confidence = float(row["confidence"])
    if row["batch_id"] is not None:
        message.batch_id = str(row["batch_id"])
    return message


def _dump(value: Any) -> str:
    """JSON for the bundle: jsonb columns decoded, times ISO 8601, UUIDs and decimals as text."""

    def plain(item: Any) -> Any:
        if isinstance(item, dict):
            return {k: plain(v) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return [plain(v) for v in item]
        if isinstance(item, str) and item[:1] in "[{":
            try:
                return json.loads(item)
            except ValueError:
                return item
        if isinstance(item, bytes):
            return f"<{len(item)} bytes>"
        return item

    return json.dumps(plain(value), indent=2, sort_keys=True, default=str)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


class InvestigationQueries(FeedbackRpcs, SimilarRpcs, investigation_pb2_grpc.InvestigationServiceServicer):
    """pm.investigation.v1.InvestigationService: reads, watch, cancel and bundle here; feedback
    and similar incidents in their mixins."""

    def __init__(self, pool: asyncpg.Pool, auth: AuthProvider, limiter: RateLimiter, engine: Engine) -> None:
        super().__init__(pool, auth, limiter)
        self._engine = engine

    async def GetInvestigation(
        self, request: investigation_pb2.GetInvestigationRequest, context: Context
    ) -> investigation_pb2.Investigation:
        await self._caller(context)
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM investigations WHERE id = $1", _id(request.id))
        if row is None:
            raise NotFound("Investigation not found", details={"id": request.id})
        return to_proto(row)

    async def ListInvestigations(
        self, request: investigation_pb2.ListInvestigationsRequest, context: Context
    ) -> investigation_pb2.ListInvestigationsResponse:
        await self._caller(context)
        page, limit = paging(request.page, request.limit)
        filters = {"status": request.status, "domain": request.domain, "ticket_id": request.ticket_id}
        rows, pages = await fetch_page(self._pool, "investigations", filters, page, limit, columns=_COLUMNS)
        return investigation_pb2.ListInvestigationsResponse(data=[to_proto(r) for r in rows], pagination=pages)

    async def GetBundle(self, request: investigation_pb2.GetBundleRequest, context: Context) -> httpbody_pb2.HttpBody:
        """A zip of everything recorded about the investigation (application/zip attachment)."""
        await self._caller(context)
        investigation_id = _id(request.id)
        investigation = await self._pool.fetchrow("SELECT * FROM investigations WHERE id = $1", investigation_id)
        if investigation is None:
            raise NotFound("Investigation not found", details={"id": request.id})
        tables = {
            "phases.json": "SELECT * FROM investigation_steps WHERE investigation_id = $1 ORDER BY created_at",
            "agent_runs.json": "SELECT * FROM agent_runs WHERE investigation_id = $1 ORDER BY completed_at",
            "hypotheses.json": "SELECT * FROM hypotheses WHERE investigation_id = $1 ORDER BY iteration, ordinal",
            "tool_calls.json": "SELECT * FROM mcp_tool_calls WHERE investigation_id = $1 ORDER BY created_at",
            "events.json": "SELECT * FROM investigation_events WHERE investigation_id = $1 ORDER BY sequence",
            "deliveries.json": "SELECT * FROM deliveries WHERE investigation_id = $1 ORDER BY created_at",
        }
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
            bundle.writestr("metadata.json", _dump(dict(investigation)))
            for name, query in tables.items():
                bundle.writestr(name, _dump([dict(r) for r in await self._pool.fetch(query, investigation_id)]))
            report = await self._pool.fetchrow(
                "SELECT * FROM reports WHERE investigation_id = $1 ORDER BY created_at DESC LIMIT 1", investigation_id
            )
            if report is not None:
                bundle.writestr("report.md", report["markdown"])
                bundle.writestr("report.json", _dump({k: v for k, v in dict(report).items() if k != "markdown"}))
            if investigation["domain"]:
                domain = await self._pool.fetchrow(
                    "SELECT * FROM domain_configs WHERE name = $1", investigation["domain"]
                )
                if domain is not None:
                    bundle.writestr("domain_config.json", _dump(dict(domain)))
        filename = f"investigation-{investigation_id}.zip"
        # Initial metadata becomes a response header through Envoy (trailers of a complete
        # response are not merged into the headers).
        await context.send_initial_metadata((("content-disposition", f'attachment; filename="{filename}"'),))
        return httpbody_pb2.HttpBody(content_type="application/zip", data=buffer.getvalue())

    async def WatchInvestigation(
        self, request: investigation_pb2.WatchInvestigationRequest, context: Context
    ) -> AsyncIterator[investigation_pb2.InvestigationEvent]:
        """The events after `after_sequence`, then new ones as they happen, until the investigation ends."""
        await self._caller(context)
        investigation_id = _id(request.id)
        if request.after_sequence < 0:
            raise InvalidArgument("Validation failed", details={"details": [
                {"path": ["after_sequence"], "message": "must not be negative", "code": "too_small"}
            ]})  # fmt: skip
        after = request.after_sequence
        while True:
            status = await self._pool.fetchval("SELECT status FROM investigations WHERE id = $1", investigation_id)
            if status is None:
                raise NotFound("Investigation not found", details={"id": request.id})
            rows = await self._pool.fetch(
                "SELECT id, sequence, occurred_at, kind, status, phase, message, detail FROM investigation_events"
                " WHERE investigation_id = $1 AND sequence > $2 ORDER BY sequence LIMIT 500",
                investigation_id,
                after,
            )
            for row in rows:
                event = investigation_pb2.InvestigationEvent(
                    event_id=str(row["id"]),
                    investigation_id=str(investigation_id),
                    sequence=row["sequence"],
                    kind=row["kind"],
                    status=row["status"] or "",
                    phase=row["phase"] or "",
                    message=row["message"],
                )
                event.occurred_at.FromDatetime(row["occurred_at"])
                detail = _json(row["detail"])
                if detail:
                    event.detail.update(detail)
                yield event
                after = row["sequence"]
            # Ended, and everything up to the end was sent (the last event is written with the status).
            if status in ("completed", "failed", "cancelled") and not rows:
                return
            if not rows:
                await asyncio.sleep(WATCH_POLL_SECONDS)

    async def CancelInvestigation(
        self, request: investigation_pb2.CancelInvestigationRequest, context: Context
    ) -> investigation_pb2.CancelInvestigationResponse:
        caller = await self._caller(context, CATEGORY_INVESTIGATION)
        investigation_id = _id(request.id)
        if len(request.reason) > 500:
            raise InvalidArgument("Validation failed", details={"details": [
                {"path": ["reason"], "message": "must be at most 500 characters", "code": "too_big"}
            ]})  # fmt: skip
        before = await self._engine.cancel(investigation_id, request.reason, caller)
        return investigation_pb2.CancelInvestigationResponse(
            investigation_id=str(investigation_id),
            status="cancelled",
            message=f"Investigation cancelled (it was {before})",
        )

    async def GetReport(
        self, request: investigation_pb2.GetReportRequest, context: Context
    ) -> investigation_pb2.Report:
        await self._caller(context)
        investigation_id = _id(request.id)
        status = await self._pool.fetchval("SELECT status FROM investigations WHERE id = $1", investigation_id)
        if status is None:
            raise NotFound("Investigation not found", details={"id": request.id})
        row = await self._pool.fetchrow(
            "SELECT * FROM reports WHERE investigation_id = $1 ORDER BY created_at DESC LIMIT 1", investigation_id
        )
        if row is None:
            raise NotFound("Report not yet available", details={"investigation_status": status})
        report = investigation_pb2.Report(
            id=str(row["id"]),
            investigation_id=str(row["investigation_id"]),
            verdict=row["verdict"],
            confidence=float(row["confidence"]),
            summary=row["summary"],
            first_failing_service=row["first_failing_service"] or "",
            blast_radius=list(row["blast_radius"] or []),
            operational_signal=row["operational_signal"] or "",
            markdown=row["markdown"],
            markdown_uri=row["markdown_uri"] or "",
            html_uri=row["html_uri"] or "",
        )
        report.created_at.FromDatetime(row["created_at"])
        for item in _json(row["evidence"]) or []:
            report.evidence.add(
                claim=item.get("claim", ""), tool_call_ids=item.get("tool_call_ids", []), stance=item.get("stance", "")
            )
        for n, step in enumerate(_json(row["recommendations"]) or [], start=1):
            report.recommendations.add(
                action=step.get("action", ""), description=step.get("description", ""), priority=n
            )
        for entry in _json(row["timeline"]) or []:
            timeline = report.timeline.add(description=entry.get("event", ""), kind=entry.get("kind", "event"))
            if entry.get("at"):
                timeline.at.FromJsonString(entry["at"])
        culprit = _json(row["culprit_change"])
        if culprit:
            change = report.culprit_change
            change.kind, change.ref = culprit.get("kind", ""), culprit.get("ref", "")
            change.service, change.summary = culprit.get("service", ""), culprit.get("title", "")
            change.still_deployed = True
            if culprit.get("at"):
                change.at.FromJsonString(culprit["at"])
        for hypothesis in _json(row["rejected_hypotheses"]) or []:
            report.rejected_hypotheses.add(
                id=str(hypothesis.get("ref", "")),
                statement=f"{hypothesis.get('kind', '')} {hypothesis.get('ref', '')}: {hypothesis.get('title', '')}",
                status="rejected",
                reason=hypothesis.get("rejected_because", ""),
            )
        return report
